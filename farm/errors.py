"""The one exception hierarchy of farm, and the exit code each error maps to.

Callers: everything raises these; ``farm.cli`` turns them into exit codes. Docker's
exceptions are translated in exactly one place, ``farm.backends.docker_errors``.

    FarmError                      exit 4 unless a subclass says otherwise
    ├── InputError                 exit 2: the user must change a flag, spec or path
    │   └── SpecError              a field of the BuildSpec is invalid (names the field)
    │       └── NotAdmittedError   valid, but above the operator's ceilings or image list
    ├── InfrastructureError        exit 4: the host is not ready or broke mid-build
    │   ├── RuntimeMissingError    the gVisor runtime is not configured in dockerd
    │   ├── DockerUnavailableError dockerd cannot be reached
    │   ├── ImageError             the builder image is missing or cannot be built
    │   ├── BusyError              farm serve is at its limit of submissions being read
    │   ├── KubernetesError        the API server refused a request (farm.k8s.kube)
    │   │   ├── ConflictError      409: stale resourceVersion or the name exists
    │   │   ├── GoneError          410: the watch's resourceVersion expired; re-list
    │   │   ├── ListTooLargeError  a list went past farm's bound (farm.k8s.paging)
    │   │   └── KubeNotFoundError  404: the object is not there (often fine)
    │   └── ArtifactServiceError   the controller's Service has no ClusterIP to upload to
    ├── CollectionError            exit 1: an output was refused (link, FIFO, too big…)
    ├── VerificationError          exit 1: `farm verify` rejected an artifact or provenance
    ├── NotFoundError              exit 2: no such build id
    ├── MirrorError                exit 2: `farm mirror` refused a crate, name or download
    │                                      (bad .crate, checksum or signature mismatch, conflict)
    └── MirrorSourceError          exit 4: an upstream (registry, Debian archive) unreachable
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``farm`` CLI, fixed by the design brief."""

    OK = 0
    BUILD_FAILED = 1
    BAD_INPUT = 2
    QUARANTINED = 3
    INFRASTRUCTURE = 4


class FarmError(Exception):
    """Root of farm's errors. The message tells the user what to change."""

    exit_code: ExitCode = ExitCode.INFRASTRUCTURE


class InputError(FarmError):
    exit_code = ExitCode.BAD_INPUT


class SpecError(InputError):
    """One or more BuildSpec fields are invalid; ``problems`` holds one line per field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid build spec:\n  " + "\n  ".join(problems))


class NotAdmittedError(SpecError):
    """The spec is valid, but this installation's operator does not allow it (farm.admission):
    ``problems`` as for SpecError, ``hint`` says who can change the limits and how."""

    def __init__(self, problems: list[str], hint: str) -> None:
        super().__init__(problems)
        self.hint = hint
        lines = "\n  ".join(problems)
        self.args = (f"refused by this installation's limits:\n  {lines}\n{hint}",)


class NotFoundError(InputError):
    pass


class MirrorError(InputError):
    """``farm mirror`` refused something: a malformed ``.crate``, a bad name or version,
    a different checksum for a version it already holds, or a download whose checksum or
    signature does not match (``farm.mirror``)."""


class InfrastructureError(FarmError):
    exit_code = ExitCode.INFRASTRUCTURE


class MirrorSourceError(InfrastructureError):
    """An upstream of ``farm mirror`` (a registry, Debian's archive) could not be read."""


class RuntimeMissingError(InfrastructureError):
    pass


class BusyError(InfrastructureError):
    """Every slot for reading a submitted source is taken; the client retries later."""


class DockerUnavailableError(InfrastructureError):
    pass


class ImageError(InfrastructureError):
    pass


class CollectionError(FarmError):
    """An output broke the collection rules; the build fails rather than ship it."""

    exit_code = ExitCode.BUILD_FAILED


class KubernetesError(InfrastructureError):
    """The Kubernetes API refused a request; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class ConflictError(KubernetesError):
    pass


class GoneError(KubernetesError):
    pass


class KubeNotFoundError(KubernetesError):
    pass


class ListTooLargeError(KubernetesError):
    """A list had more items than farm reads in one list (``farm.k8s.paging``)."""


class ArtifactServiceError(InfrastructureError):
    """The controller's artifact Service is missing, headless or has no ``artifacts``
    port, so a build pod's collector would have no address to upload to
    (``farm.k8s.endpoint``)."""


class VerificationError(FarmError):
    """A signature, digest or policy requirement did not hold (``farm verify``)."""

    exit_code = ExitCode.BUILD_FAILED


class FetchError(FarmError):
    """The fetch phase (``farm.fetch``) refused a project's dependencies; raised before any
    sandbox exists. The message names the package and says what to change.

        FetchError                  exit 2
        ├── LockfileError           exit 2: Cargo.lock is missing, unreadable or out of bounds
        ├── PackageMissingError     exit 2: the registry has no such name+version
        ├── CrateRejectedError      exit 1: a downloaded .crate broke the unpacking rules
        ├── ChecksumMismatchError   exit 1: the registry's bytes differ from the lock
        └── RegistryUnreachableError exit 4: the registry could not be reached
    """

    exit_code = ExitCode.BAD_INPUT


class LockfileError(FetchError):
    pass


class PackageMissingError(FetchError):
    pass


class CrateRejectedError(FetchError):
    exit_code = ExitCode.BUILD_FAILED


class ChecksumMismatchError(FetchError):
    exit_code = ExitCode.BUILD_FAILED


class RegistryUnreachableError(FetchError):
    exit_code = ExitCode.INFRASTRUCTURE
