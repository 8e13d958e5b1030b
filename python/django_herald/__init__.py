"""django_herald: the Django side of herald.

- ``path("herald/", include("django_herald.urls"))``: the connect hook view
  (``auth = "hook"`` routes ask it whether a browser may listen).
- :func:`publish` / :func:`apublish`: publish through herald's API, with retries that
  reuse one idempotency key.
- :func:`token`: HS256 connection tokens for ``auth = "token"`` routes.
- System checks warning about channels_redis settings that lose herald's messages.
"""

from .publish import HeraldError, apublish, publish
from .tokens import token

__all__ = ["HeraldError", "apublish", "publish", "token"]
