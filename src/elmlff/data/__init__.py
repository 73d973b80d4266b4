"""Data ingestion: readers (units converted at the boundary), `Frames`, split manifests."""

from elmlff.data.frames import Frames
from elmlff.data.readers import READERS, read
from elmlff.data.split import ROLES, Split, make_split

__all__ = ["READERS", "ROLES", "Frames", "Split", "make_split", "read"]
