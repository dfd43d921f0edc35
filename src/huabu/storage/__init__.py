"""Where images live: a local folder today (S3-compatible later), behind signed URLs."""

from huabu.storage.local import LocalStorage, content_type
from huabu.storage.signing import UrlSigner

__all__ = ["LocalStorage", "UrlSigner", "content_type"]
