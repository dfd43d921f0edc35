"""Everything a request handler may use, built once per server process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from huabu.auth import Accounts, Authenticator
from huabu.catalog.library import ModelLibrary
from huabu.catalog.shared import Catalog
from huabu.settings import Settings
from huabu.storage import Storage, UrlSigner, open_storage
from huabu.storage.signing import installation_secret
from huabu.tasks.cancel import cancel_task
from huabu.tasks.events import TaskEvents
from huabu.tasks.reads import TaskReads
from huabu.tasks.records import TaskRecord
from huabu.tasks.retention import delete_task
from huabu.tasks.submit import TaskSubmitter
from huabu.tasks.uploads import NewUploads, Uploads, decode_slots
from huabu.tasks.webhooks import Deliveries
from huabu.training.service import TrainingService


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    accounts: Accounts
    auth: Authenticator
    #: What requests may name: the fleet's models (see ``catalog.shared``).
    catalog: Catalog
    storage: Storage
    signer: UrlSigner
    #: Reading tasks (get, list, current, positions and ETAs).
    tasks: TaskReads
    #: Submitting them.
    submitter: TaskSubmitter
    uploads: Uploads
    training: TrainingService
    events: TaskEvents
    #: Webhook deliveries: sent by this process's service jobs, listed to their owners.
    deliveries: Deliveries

    @classmethod
    def build(
        cls,
        settings: Settings,
        sessions: sessionmaker[Session],
        database_uri: str,
        render_task: Callable[[Services, TaskRecord], dict[str, Any]],
    ) -> Services:
        """``render_task``: a task as the native API shows it (webhook bodies carry it)."""
        accounts = Accounts(sessions)
        # Its own library too, if it has one (one machine, or a shared folder), read live.
        catalog = Catalog(sessions, ModelLibrary(settings), settings.default_model)
        storage = open_storage(settings)
        reads = TaskReads(settings, sessions)
        uploads = Uploads(settings, sessions, storage, decode_slots(settings.decode_slots))
        submitter = TaskSubmitter(settings, sessions, storage, catalog, reads, uploads)
        events = TaskEvents(database_uri)
        reads.enable_cache()
        events.listeners.append(reads.forget)
        services = cls(
            settings=settings,
            sessions=sessions,
            accounts=accounts,
            auth=Authenticator(
                accounts,
                anonymous=settings.anonymous,
                login_attempts=settings.login_attempts,
                login_address_attempts=settings.login_address_attempts,
            ),
            catalog=catalog,
            storage=storage,
            signer=UrlSigner(installation_secret(settings), settings.url_ttl),
            tasks=reads,
            submitter=submitter,
            uploads=uploads,
            training=TrainingService(settings, submitter),
            events=events,
            deliveries=None,  # type: ignore[arg-type]  # needs the services themselves
        )
        services.deliveries = Deliveries(
            settings, sessions, reads, lambda record: render_task(services, record)
        )
        return services

    def new_uploads(self) -> NewUploads:
        """A holder for the images that arrive with one request (see ``tasks.uploads``)."""
        return NewUploads(self.settings, self.uploads.slots)

    def delete(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> None:
        """Delete the caller's task (see ``tasks.retention``): gone from now on."""
        task_id = delete_task(self.sessions, self.storage, owner_id, task_id)
        self.tasks.forget(str(task_id))

    def cancel(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> TaskRecord:
        """Cancel the caller's task (see ``tasks.cancel``) and return it as it is now."""
        task_id = cancel_task(self.sessions, owner_id, task_id)
        self.tasks.forget(str(task_id))
        return self.tasks.get(owner_id, task_id)
