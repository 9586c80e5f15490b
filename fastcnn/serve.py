"""``fastcnn serve``: a page to draw a digit or drop a photo, and ``POST /predict`` behind it.

``POST /predict`` takes a picture's bytes as the request body (PNG, JPEG, anything Pillow reads)
and answers ``{"prediction": 7, "probabilities": [10 floats], "classes": [10 names],
"image": 28 rows of 28 pixels 0-255 (what the model saw), "notes": [...]}``. For a model of colour
images (CIFAR-10) the picture is read as a photo and ``"image"`` is 32 rows of 32 ``[r, g, b]``;
the page then takes photos only (drawing one makes no sense). For a model trained on an image
folder, the picture is read as the folder's were (resized to the model's H x W), ``"image"`` is
H rows of W, and the page takes pictures only. A bad upload (empty, not an image,
over ``MAX_UPLOAD`` bytes or ``image.MAX_PIXELS`` pixels, no digit in it) gets a 4xx with
``{"error": "what was wrong"}``. The page (``web/index.html``) is plain HTML and JavaScript:
nothing to build. Flask comes with the ``[web]`` extra.
"""

import html
import importlib.resources
import io
import threading
import warnings

import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from . import compiling
from .data import CLASS_NAMES, IMAGE_SHAPES
from .errors import ImageError, ShapeError
from .image import ImageWarning, load_photo
from .inference import picture_loader

__all__ = ["MAX_UPLOAD", "create_app", "serve"]

MAX_UPLOAD = 25_000_000  # bytes: a phone photo is 3-12 MB; more is not a photo of one digit


def create_app(model, classes=CLASS_NAMES["mnist"], folder=False):
    """The Flask app that serves the page and ``POST /predict`` for ``model``; ``folder``: it was
    trained on an image folder, and reads a picture as the folder's were read."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    load = picture_loader(model, folder)
    _compile_ahead(model, load)
    page = (importlib.resources.files(__package__) / "web" / "index.html").read_text(encoding="utf-8")
    if folder:
        h, w, c = model.input_shape
        hint = html.escape(f"This model reads a picture as it was trained: resized to {h}x{w}, in "
                           f"{'grey' if c == 1 else 'colour'}; its classes: {', '.join(classes)}.")
        page = page.replace('<body data-input="digit">', f'<body data-input="picture" data-hint="{hint}">', 1)
    elif load is load_photo:
        page = page.replace('<body data-input="digit">', '<body data-input="photo">', 1)
    lock = threading.Lock()  # Numba's thread pool is not to be entered from two threads at once

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.post("/predict")
    def predict():
        body = request.get_data(cache=False)
        if not body:
            return _error(400, "empty request: send the picture's bytes (PNG, JPEG, ...) as the body")
        upload = io.BytesIO(body)
        upload.name = "the upload"  # what the loader's messages call it
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", ImageWarning)
            try:
                seen = load(upload)
            except ImageError as e:
                return _error(400, str(e))
        with lock:
            p = model.predict(seen[None])[0]
        pixels = np.round(seen * 255).astype(int)
        return jsonify(prediction=int(np.argmax(p)), probabilities=[float(q) for q in p], classes=list(classes),
                       image=(pixels if pixels.shape[2] == 3 else pixels[:, :, 0]).tolist(),
                       notes=[str(n.message) for n in notes])

    @app.errorhandler(HTTPException)
    def http_error(e):  # 404, 405, 413 ... as JSON with the reason, like the rest of the API
        if e.code == 413:
            return _error(413, f"upload too large: expected at most {MAX_UPLOAD:,} bytes")
        return _error(e.code, e.description)

    return app


def _compile_ahead(model, load):
    """Compile (or load) the kernels a prediction runs now, not in the first request."""
    try:
        plan = model.plan(IMAGE_SHAPES["cifar10" if load is load_photo else "mnist"])
    except ShapeError:
        return  # pictures don't fit this model: each request says so
    compiling.prepare(plan, (False,))


def _error(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def serve(model, host="127.0.0.1", port=8000, classes=CLASS_NAMES["mnist"], model_name="the model", folder=False):
    """Serve the page until Ctrl-C. ``port`` 0 takes a free one."""
    server = make_server(host, port, create_app(model, classes, folder), threaded=True)
    print(f"Serving {model_name} on http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
