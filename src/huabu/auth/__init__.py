"""Users and credentials, the one auth module every dialect uses."""

from huabu.auth.accounts import Accounts, Principal
from huabu.auth.bearer import Authenticator
from huabu.errors import AuthFailed

__all__ = ["Accounts", "AuthFailed", "Authenticator", "Principal"]
