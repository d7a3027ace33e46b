"""The one place where Docker SDK and HTTP errors become farm errors.

Callers: ``farm.backends.local`` and ``farm.images`` wrap every Docker call in
``translated()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker.errors
import requests.exceptions

from farm.errors import DockerUnavailableError, ImageError, InfrastructureError, InputError


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Raise a FarmError that says what failed and what to do about it."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageError(
            f"{action}: image not found ({exc.explanation}); build it with `farm image build rust`"
        ) from exc
    except (requests.exceptions.ConnectionError, FileNotFoundError) as exc:
        raise DockerUnavailableError(
            f"{action}: cannot reach dockerd ({exc}); start it with `farm host setup`"
        ) from exc
    except docker.errors.APIError as exc:
        if "error finding executable" in str(exc.explanation):
            raise InputError(
                f"{action}: the command is not in the image ({exc.explanation})"
            ) from exc
        raise InfrastructureError(f"{action}: {exc}") from exc
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"{action}: {exc}") from exc
