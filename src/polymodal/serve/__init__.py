"""HTTP service (extra ``[serve]``): a versioned JSON API over a model and its collections, dynamic
micro-batching of embedding requests, Prometheus metrics and a static search page.

    from polymodal.serve import create_app, ServeSettings
    app = create_app(model, root="runs/collections", settings=ServeSettings(api_key="..."))

or from the shell: ``polymodal serve --model RUN --collection DIR``. Importing this package needs FastAPI
(a one-line install hint otherwise)."""

from ..errors import BatcherClosed, QueueFull, require

require("fastapi", "serve")

from ..index.media import MediaStore  # noqa: E402
from .app import create_app  # noqa: E402
from .batching import MicroBatcher  # noqa: E402
from .media import MediaLimits  # noqa: E402
from .service import ServeSettings  # noqa: E402

__all__ = ["BatcherClosed", "MediaLimits", "MediaStore", "MicroBatcher", "QueueFull", "ServeSettings", "create_app"]
