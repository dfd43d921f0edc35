"""The worker side: the process that takes jobs (``process``), procrastinate behind a narrow
interface (``jobs``), the router that picks a job by checkpoint (``router``), the batcher that
joins queued jobs to it (``batcher``), the runner that claims and settles a task (``runner``),
the task handlers (``handle_generation``, ``handle_training``), a task's input images read
back from storage (``inputs``) and one worker per device (``devices``). Only worker processes
import this package's handlers, and with them torch."""
