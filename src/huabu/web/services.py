"""Everything a request handler may use, built once per server process."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from huabu.auth import Accounts, Authenticator
from huabu.engine.library import ModelLibrary
from huabu.settings import Settings
from huabu.storage import LocalStorage, UrlSigner
from huabu.storage.signing import installation_secret
from huabu.tasks.events import TaskEvents
from huabu.tasks.service import TaskService
from huabu.training.service import TrainingService


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    accounts: Accounts
    auth: Authenticator
    library: ModelLibrary
    storage: LocalStorage
    signer: UrlSigner
    tasks: TaskService
    training: TrainingService
    events: TaskEvents

    @classmethod
    def build(
        cls, settings: Settings, sessions: sessionmaker[Session], database_uri: str
    ) -> Services:
        accounts = Accounts(sessions)
        library = ModelLibrary(settings)
        storage = LocalStorage(settings.files_dir)
        tasks = TaskService(settings, sessions, storage, library)
        events = TaskEvents(database_uri)
        tasks.enable_cache()
        events.listeners.append(tasks.forget)
        return cls(
            settings=settings,
            sessions=sessions,
            accounts=accounts,
            auth=Authenticator(accounts, anonymous=settings.anonymous),
            library=library,
            storage=storage,
            signer=UrlSigner(installation_secret(settings), settings.url_ttl),
            tasks=tasks,
            training=TrainingService(settings, tasks),
            events=events,
        )
