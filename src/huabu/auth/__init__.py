"""Users and credentials, the one auth module every dialect uses."""

from huabu.auth.accounts import Accounts, AuthFailed

__all__ = ["Accounts", "AuthFailed"]
