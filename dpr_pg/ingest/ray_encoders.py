"""Encoding on a Ray cluster: actors that each hold one passage encoder; the rest stays here.

Reading, chunking, hashing, the lookup of stored hashes and the writes (COPY + upsert) run on
this machine exactly as in a local ingest (:mod:`dpr_pg.ingest.batches`); only a batch's changed
``(title, text)`` passages go to an actor, which tokenizes and encodes them and sends back the
vectors. So idempotency, resumability and the report are the local ones.

Each actor loads the pair's passage model by name (a Hub id, or a folder that must exist at the
same path on every node) and must come up with the revision, dimension and max length of the
fingerprint recorded for the ingest, or nothing is written. On a cluster with GPUs each actor
takes one; otherwise :data:`CPUS_PER_ACTOR` cores. A batch whose actor dies (the worker process
killed, the node lost) goes to a fresh actor; the report counts these ``ray_retries``.

Ray is an optional dependency: ``pip install 'dpr-pg[ray]'``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpr_pg.encoders.batching import EncodeResult
from dpr_pg.encoders.pair import PassageEncoder
from dpr_pg.errors import ConfigError, EncoderMismatchError, IngestError

if TYPE_CHECKING:
    from dpr_pg.encoders.fingerprint import EncoderFingerprint

RAY_INSTALL = "pip install 'dpr-pg[ray]'"
CPUS_PER_ACTOR = 4  # torch threads of one CPU actor: more per actor scale worse than more actors
BATCHES_PER_ACTOR = 2  # submitted and not yet collected: each actor always has its next batch
MAX_ATTEMPTS = 4  # per batch: the first one and three retries on fresh actors
ACTOR_NAME = "dpr_pg-passage-encoder"


@dataclass(frozen=True)
class RayEncoding:
    """Where and how to encode on Ray: ``ingest(..., ray=RayEncoding("ray://head:10001"))``.

    ``address`` goes to ``ray.init``: None joins the cluster of ``RAY_ADDRESS``, else starts
    Ray on this machine (a Ray already initialised in this process is used as it is); ``"auto"``
    joins a cluster this machine belongs to; ``"ray://host:10001"`` is Ray Client. ``actors``
    defaults to one per GPU of the cluster, else one per :data:`CPUS_PER_ACTOR` cores.
    ``precision`` and ``batch_size`` are the actors' encoder options (default: their device's).

    Example:
        >>> RayEncoding("auto", actors=4).actors
        4
    """

    address: str | None = None
    actors: int | None = None
    precision: str | None = None
    batch_size: int | None = None

    @classmethod
    def of(cls, value: RayEncoding | str | bool | None) -> RayEncoding | None:
        """``ingest``'s ``ray=``: True (the defaults), an address, a :class:`RayEncoding`, or None/False."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, str):
            return cls(value or None)
        if isinstance(value, RayEncoding):
            return value
        raise ConfigError(f"expected ray= True, an address (str) or a RayEncoding, not {value!r}")


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"encoding on Ray (--ray) needs Ray, which is not installed here: {RAY_INSTALL}") from e
    return ray


class PassageActor:
    """One passage encoder in a Ray worker (wrapped by ``ray.remote`` when the ingest starts)."""

    def __init__(self, name: str, revision: str | None, precision: str | None, batch_size: int | None) -> None:
        self.encoder = PassageEncoder.load(name, revision=revision, precision=precision, batch_size=batch_size,
                                           runtime="torch")

    def identity(self) -> dict[str, Any]:
        encoder = self.encoder
        return {"revision": encoder.revision, "dim": encoder.dim, "max_length": encoder.max_length,
                "device": str(encoder.device), "precision": encoder.precision, "pid": os.getpid()}

    def encode(self, passages: list[tuple[str, str]]) -> tuple[np.ndarray, list[int]]:
        result = self.encoder.encode_result(passages)
        return result.embeddings, result.truncated


@dataclass
class Pending:
    """A batch on its way through an actor."""

    passages: list[tuple[str, str]]
    actor: int  # the actor's slot
    handle: Any  # the actor in that slot when the batch was sent
    ref: Any
    attempts: int = 1


class RayEncoders:
    """The actors of one ingest: :meth:`submit` a batch, :meth:`result` waits for its vectors.

    ``on_retry`` is called once for each batch sent again after its actor died. Ray and the actors
    start with the first batch (:meth:`start`) and stop on :meth:`close`.
    """

    def __init__(self, options: RayEncoding, fingerprint: EncoderFingerprint, *,
                 on_retry: Callable[[], None] = lambda: None) -> None:
        self.options = options
        self.fingerprint = fingerprint
        self.on_retry = on_retry
        self.ray = import_ray()
        self._started_ray = False
        self._actors: list[Any] = []
        self._load: list[int] = []
        self._remote: Any = None
        self._id = uuid.uuid4().hex[:8]
        self._made = 0

    @property
    def actors(self) -> int:
        return len(self._actors)

    @property
    def capacity(self) -> int:
        """Batches to keep submitted so that no actor waits for work."""
        return BATCHES_PER_ACTOR * max(1, len(self._actors))

    def __enter__(self) -> RayEncoders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Join the cluster (or start Ray here) and start the actors: on the first batch to encode,
        so that a re-run with nothing changed never waits for Ray."""
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.options.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"could not join the Ray cluster at {self.options.address or 'RAY_ADDRESS'}: "
                                  f"{e}; expected a running cluster (ray start --head on its head node) or no "
                                  "address to start Ray on this machine") from e
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if gpus:
            count, needs = self.options.actors or gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            per_actor = min(CPUS_PER_ACTOR, cpus)
            count, needs = self.options.actors or max(1, cpus // per_actor), {"num_cpus": per_actor}
        if count < 1:
            raise ConfigError(f"expected at least one Ray actor, not {count}")
        self._remote = ray.remote(max_restarts=0, max_task_retries=0, **needs)(PassageActor)
        self._actors = [self._new_actor() for _ in range(count)]  # they load in parallel
        self._load = [0] * count
        for index in range(count):
            self._ready(index)

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone with its worker: nothing to free
                pass
        self._actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def submit(self, passages: list[tuple[str, str]]) -> Pending:
        if not self._actors:
            self.start()
        actor = min(range(len(self._actors)), key=self._load.__getitem__)
        self._load[actor] += 1
        handle = self._actors[actor]
        return Pending(passages, actor, handle, handle.encode.remote(passages))

    def result(self, pending: Pending) -> EncodeResult:
        """The batch's vectors; a dead actor is replaced and the batch sent again (``MAX_ATTEMPTS`` in all)."""
        exceptions = self.ray.exceptions
        while True:
            try:
                embeddings, truncated = self.ray.get(pending.ref)
                self._load[pending.actor] -= 1
                return EncodeResult(embeddings, truncated)
            except (exceptions.RayActorError, exceptions.WorkerCrashedError) as e:
                self._load[pending.actor] -= 1
                if pending.attempts >= MAX_ATTEMPTS:
                    raise IngestError(
                        f"a batch of {len(pending.passages)} passages was sent to {pending.attempts} Ray actors and "
                        f"each died ({_first_line(e)}); what was committed is kept: check the workers' logs "
                        "(memory, GPU) and re-run the same command") from e
                self.on_retry()
                # The other batches that were with the dead actor die too: the first one collected replaces
                # it, the others go to that replacement (replacing it again would kill their retries).
                if self._actors[pending.actor] is pending.handle:
                    self._replace(pending.actor)
                pending.attempts += 1
                self._load[pending.actor] += 1
                pending.handle = self._actors[pending.actor]
                pending.ref = pending.handle.encode.remote(pending.passages)

    def _new_actor(self) -> Any:
        fingerprint = self.fingerprint
        revision = fingerprint.passage_revision
        pinned = revision if revision and not revision.startswith("sha256:") else None  # a folder: its files
        self._made += 1  # named, so that an operator (or a test) can find and stop one
        return self._remote.options(name=f"{ACTOR_NAME}-{self._id}-{self._made}").remote(
            fingerprint.passage_model, pinned, self.options.precision, self.options.batch_size)

    def _replace(self, index: int) -> None:
        dead = self._actors[index]
        try:
            self.ray.kill(dead)
        except Exception:  # already gone
            pass
        self._actors[index] = self._new_actor()
        self._ready(index)

    def _ready(self, index: int) -> None:
        """Wait for actor ``index`` to load its encoder and check it; one that dies meanwhile is replaced."""
        exceptions = self.ray.exceptions
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                self._check(self.ray.get(self._actors[index].identity.remote()))
                return
            except (exceptions.RayActorError, exceptions.WorkerCrashedError) as e:
                if attempt == MAX_ATTEMPTS:
                    raise IngestError(
                        f"{attempt} Ray actors died while loading {self.fingerprint.passage_model} "
                        f"({_first_line(e)}); expected the model at the same path (or Hub id) on every node, "
                        "with the memory to load it: check the workers' logs and re-run the same command") from e
                self.on_retry()
                self._actors[index] = self._new_actor()

    def _check(self, identity: dict[str, Any]) -> None:
        expected = self.fingerprint
        found = (identity["revision"], identity["dim"], identity["max_length"])
        wanted = (expected.passage_revision, expected.dim, expected.max_length)
        if found != wanted:
            raise EncoderMismatchError(
                f"a Ray actor loaded {expected.passage_model} as revision {found[0]}, {found[1]}-d, max_length "
                f"{found[2]}; expected revision {wanted[0]}, {wanted[1]}-d, max_length {wanted[2]} (the pair of this "
                "ingest): give every node the same model files (a folder at the same path, or a Hub revision)")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__
