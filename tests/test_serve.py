"""fastcnn serve: POST /predict answers in JSON, bad uploads get a 4xx, and the page works in Chromium."""

import contextlib
import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("flask", reason="fastcnn serve needs the [web] extra: pip install -e '.[web]'")

from fastcnn import serve  # noqa: E402
from fastcnn.settings import ServerLimits  # noqa: E402

from test_image import bilevel_png  # noqa: E402


def png(im, fmt="PNG"):
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def seven():
    im = Image.new("L", (300, 300), 230)
    ImageDraw.Draw(im).line([(80, 70), (220, 70), (130, 240)], fill=20, width=18)
    return im


@pytest.fixture(scope="module")
def client(trained_model):
    model, _ = trained_model
    return serve.create_app(model).test_client()


def test_predict_answers_in_json(client):
    r = client.post("/predict", data=png(seven()))
    assert r.status_code == 200, r.json
    answer = r.json
    assert answer["prediction"] == 7 and answer["classes"] == [str(d) for d in range(10)]
    p = np.array(answer["probabilities"])
    assert p.shape == (10,) and abs(p.sum() - 1) < 1e-5 and p.argmax() == 7
    seen = np.array(answer["image"])
    assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0 and answer["notes"] == []


def test_a_jpeg_photo_and_a_tiny_picture(client):
    assert client.post("/predict", data=png(seven().convert("RGB"), "JPEG")).json["prediction"] == 7
    tiny = client.post("/predict", data=png(seven().resize((10, 10), Image.Resampling.BOX))).json
    assert "enlarged" in tiny["notes"][0] and tiny["notes"][0].startswith("the upload: ")


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty request"),
    (b"GIF89a not really", 400, "not an image file"),
    (png(Image.new("L", (50, 50), 255)), 400, "no digit found: the image is blank"),
    (png(seven())[:200], 400, "cannot read the image"),
    (bilevel_png(7000, 7000), 400, "49000000 pixels, expected at most 40000000"),
])
def test_bad_uploads_get_a_4xx_with_the_reason(client, body, status, message):
    r = client.post("/predict", data=body)
    assert r.status_code == status and message in r.json["error"], r.json


def test_a_form_with_one_picture_is_read_as_the_picture_itself(client):
    # requests.post(url, files=...), curl -F, an HTML form: the one file in it, as if sent alone
    alone = client.post("/predict", data=png(seven())).json
    r = client.post("/predict", data={"image": (io.BytesIO(png(seven())), "seven.png"), "note": "a field"})
    assert r.status_code == 200 and r.json == alone, r.json
    two = {"a": (io.BytesIO(png(seven())), "a.png"), "b": (io.BytesIO(png(seven())), "b.png")}
    for form, files in ((two, 2), ({"note": "no file"}, 0)):
        r = client.post("/predict", data=form, content_type="multipart/form-data")
        assert r.status_code == 400 and f"a form with {files} files: send one picture" in r.json["error"], r.json
    r = client.post("/predict", data={"image": (io.BytesIO(b""), "empty.png")})
    assert r.status_code == 400 and "not an image file" in r.json["error"], r.json
    many = {f"field{i}": "x" for i in range(3000)}  # werkzeug stops parsing a form at 1,000 parts
    r = client.post("/predict", data={**many, "image": (io.BytesIO(png(seven())), "seven.png")})
    assert r.status_code == 413 and "a form of too many parts" in r.json["error"], r.json


def test_too_large_uploads_and_wrong_urls(client, trained_model):
    small = serve.create_app(trained_model[0], limits=ServerLimits(max_upload=1000)).test_client()
    r = small.post("/predict", data=b"x" * 5000)
    assert r.status_code == 413 and "at most 1,000 bytes" in r.json["error"]
    assert client.get("/predict").status_code == 405 and client.get("/nope").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and b'<canvas id="pad"' in page.data


# --- the page in a real browser ------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,650", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@contextlib.contextmanager
def running(app, limits=ServerLimits()):
    """``app`` served by waitress (as ``fastcnn serve`` does) on a free port, in a thread: its URL."""
    httpd = serve.make_server(app, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=httpd.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.port}/"
    finally:
        httpd.stop()
        thread.join(10)


@pytest.fixture
def server(trained_model):
    with running(serve.create_app(trained_model[0])) as url:
        yield url


def draw(driver, pad, strokes):
    """Drag the mouse along each stroke, given as points in the pad's 280x280 pixels."""
    from selenium.webdriver.common.action_chains import ActionChains
    for points in strokes:
        # Several small moves per segment, as a hand makes, so the page sees many pointermoves.
        path = [np.round(a + t * (b - a)) for a, b in zip(np.array(points[:-1]), np.array(points[1:]))
                for t in np.linspace(0, 1, 8)[1:]]
        chain = ActionChains(driver, duration=10)
        chain.move_to_element_with_offset(pad, int(points[0][0]) - 140, int(points[0][1]) - 140).click_and_hold()
        here = np.array(points[0])
        for p in path:
            chain.move_by_offset(int(p[0] - here[0]), int(p[1] - here[1]))
            here = p
        chain.release().perform()


def read_answer(driver, previous=""):
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element("id", "prediction").text not in ("", previous) or d.find_element("id", "error").text)
    assert driver.find_element("id", "error").text == ""
    bars = driver.find_elements("css selector", "#bars .bar")
    widths = [float(b.find_element("css selector", "div").get_attribute("style").split("width:")[1].split("%")[0])
              for b in bars]
    return driver.find_element("id", "prediction").text, widths


def test_draw_a_digit_in_chromium(browser, server):
    browser.get(server)
    pad = browser.find_element("id", "pad")
    draw(browser, pad, [[(140, 40), (140, 240)]])  # a 1
    digit, widths = read_answer(browser)
    assert digit == "1" and len(widths) == 10 and widths[1] == max(widths) and abs(sum(widths) - 100) < 1
    # What the model saw is on the page: a white stroke on black in the 28x28 canvas.
    seen = browser.execute_script(
        "return Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data)")
    seen = np.array(seen).reshape(28, 28, 4)[:, :, 0]
    assert seen.max() == 255 and seen[:, :4].max() == 0 and (seen[:, 11:18].max(axis=1) > 128).sum() >= 18

    browser.find_element("id", "clear").click()
    draw(browser, pad, [[(60, 60), (220, 60), (120, 250)]])  # a 7
    digit, widths = read_answer(browser)
    assert digit == "7" and widths[7] == max(widths)
    if os.environ.get("FASTCNN_SCREENSHOT"):
        time.sleep(0.2)
        browser.save_screenshot(os.environ["FASTCNN_SCREENSHOT"])


def test_a_photo_chosen_on_the_page_is_read(browser, server, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.uint8(np.linspace(120, 250, 300))[None, :].repeat(300, 0)).save(photo)  # uneven light
    browser.get(server)
    browser.find_element("id", "file").send_keys(str(photo))  # a page of no digit: the reason is shown
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "error").text)
    assert "no digit found" in browser.find_element("id", "error").text
    browser.find_element("id", "clear").click()
    seven().convert("RGB").save(tmp_path / "seven.jpg", quality=60)
    browser.find_element("id", "file").send_keys(str(tmp_path / "seven.jpg"))
    assert read_answer(browser)[0] == "7"


def test_only_the_latest_answer_is_shown_and_an_error_clears_the_last_one(browser, server, tmp_path):
    # A slow upload's answer came after a later drawing's and replaced it on the page; an error
    # stood beside the previous picture's answer.
    browser.get(server)
    browser.execute_script("""
        const real = window.fetch; let calls = 0;  // the first request's answer held back 2 s
        window.fetch = (...args) => { const k = calls++;
          return real(...args).then(r => k === 0 ? new Promise(ok => setTimeout(() => ok(r), 2000)) : r); };""")
    seven().convert("RGB").save(tmp_path / "seven.jpg", quality=90)
    browser.find_element("id", "file").send_keys(str(tmp_path / "seven.jpg"))  # sent first, answered last
    draw(browser, browser.find_element("id", "pad"), [[(140, 40), (140, 240)]])  # a 1
    assert read_answer(browser)[0] == "1"
    time.sleep(2.5)
    assert browser.find_element("id", "prediction").text == "1"  # the 7's answer came, and was dropped
    (tmp_path / "notes.txt").write_text("not a picture")
    browser.find_element("id", "file").send_keys(str(tmp_path / "notes.txt"))
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "error").text)
    assert "not an image file" in browser.find_element("id", "error").text
    assert browser.find_element("id", "prediction").text == ""
    assert not browser.find_elements("css selector", "#bars .bar")


def test_the_page_fits_a_phone(browser, server):
    # At 320 and 360 pixels the page was 372 wide: the file input and the hint ran off the screen.
    for width in (320, 360):
        browser.set_window_size(width, 700)
        browser.get(server)
        draw(browser, browser.find_element("id", "pad"), [[(140, 40), (140, 240)]])  # the bars shown too
        read_answer(browser)
        inner, scrolled = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]")
        assert scrolled <= inner, (width, inner, scrolled)


@pytest.fixture
def colour_server():
    from fastcnn import data
    from test_colour import colour_model
    with running(serve.create_app(colour_model(), data.CLASS_NAMES["cifar10"])) as url:
        yield url


def test_the_page_of_a_colour_model_takes_photos(browser, colour_server, tmp_path):
    from fastcnn import data
    browser.get(colour_server)
    assert browser.find_element("id", "title").text.startswith("Drop a photo") and "digit" not in browser.title
    assert "not drawings" in browser.find_element("id", "hint").text
    draw(browser, browser.find_element("id", "pad"), [[(140, 40), (140, 240)]])  # ignored: nothing is sent
    time.sleep(0.5)
    assert browser.find_element("id", "prediction").text == ""
    photo = np.zeros((60, 80, 3), np.uint8)
    photo[:30] = 255, 0, 0  # red over green
    photo[30:] = 0, 255, 0
    Image.fromarray(photo).save(tmp_path / "photo.png")
    browser.find_element("id", "file").send_keys(str(tmp_path / "photo.png"))
    name, widths = read_answer(browser)
    assert name in data.CLASS_NAMES["cifar10"] and len(widths) == 10
    assert browser.find_element("id", "side").text == "32x32"
    seen = browser.execute_script(
        "const c = document.getElementById('seen'); return [c.width, c.height, "
        "Array.from(c.getContext('2d').getImageData(0, 0, 32, 32).data)]")
    assert seen[:2] == [32, 32]
    rgba = np.array(seen[2]).reshape(32, 32, 4)
    assert rgba[2, 16].tolist() == [255, 0, 0, 255] and rgba[-3, 16].tolist() == [0, 255, 0, 255]


def test_the_serve_command(trained_model):
    import json
    import subprocess
    import sys
    import urllib.request
    _, model_path = trained_model
    proc = subprocess.Popen([sys.executable, "-m", "fastcnn.cli", "serve", str(model_path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "Serving MODEL on http://127.0.0.1:PORT/ (Ctrl-C to stop)"
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[1].split()[0]
        request = urllib.request.Request(url + "predict", data=png(seven()), method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.load(r)["prediction"] == 7
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_load_benchmark_in_a_short_mode(trained_model):
    """benchmarks/serve_load.py, briefly: 4 clients for a second, every answer the in-process one."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    _, model_path = trained_model
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "serve_load.py"), str(model_path), "--clients", "4",
                          "--seconds", "1", "--digits", "20"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 clients" in run.stdout and "0 errors, 0 digits read otherwise" in run.stdout
    assert "pictures predicted in" in run.stdout  # the server's summary as it stopped
