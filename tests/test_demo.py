"""The draw-a-digit page: its JSON endpoint, bad input, and real strokes drawn in Chromium."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from . import support

pytestmark = pytest.mark.slow
SCALE = 10  # the page's canvas is 280×280 for a 28×28 digit
MAX_BODY = 1_000_000  # room for a small file holding a huge image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def demo(real_model, trained, folder):
    raw = trained.params.model_dump(mode="json")
    raw["serve"]["max_body_bytes"] = MAX_BODY
    raw["monitor"]["log_path"] = str(folder / "predictions.db")  # this server's rows only
    params = support.write_params(raw, folder / "params.yaml")
    args = ["--params", str(params), "--model", str(real_model.path)]
    with support.running("pipeline.serving.demo", args, "/health", folder / "demo.log") as process:
        yield process


def classify(url: str, body: bytes) -> tuple[int, dict]:
    return support.post_json(url + "/api/classify", body)


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(255 - (image * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BAD = {
    "malformed JSON": b'{"image": ',
    "empty body": b"",
    "no image key": json.dumps({"picture": "x"}).encode(),
    "not base64": json.dumps({"image": "data:image/png;base64,@@@@"}).encode(),
    "not an image": json.dumps({"image": base64.b64encode(b"hello").decode()}).encode(),
    "a number": json.dumps({"image": float("nan")}).encode(),
    "blank image": json.dumps({"image": png_data_url(np.zeros((28, 28)))}).encode(),
    "oversized": json.dumps({"image": "A" * (MAX_BODY + 1)}).encode(),
    "nested 100,000 deep": b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_a_4xx_with_one_line_and_the_page_goes_on(demo, real_model, case):
    status, answer = classify(demo.url, BAD[case])
    assert 400 <= status < 500, (status, answer)
    assert answer["message"] and "\n" not in answer["message"]
    good = json.dumps({"image": png_data_url(real_model.images[1])}).encode()
    assert classify(demo.url, good)[0] == 200


def test_the_top_classes_best_first_counted_and_logged_with_no_tensorflow(demo, folder, real_model):
    route = {"route": "/api/classify"}
    started, before = time.time(), support.prometheus_samples(demo.url)
    answers = [classify(demo.url, json.dumps({"image": png_data_url(image)}).encode())[1]
               for image in real_model.images[:3]]  # fmt: skip
    probabilities = [item["probability"] for item in answers[0]["classes"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert answers[0]["classes"][0]["label"] == str(real_model.predicted[0])
    assert "tensorflow" not in support.mapped_files(demo.pid)
    for body in (BAD["nested 100,000 deep"], BAD["malformed JSON"]):
        assert classify(demo.url, body)[0] == 400
    after = support.prometheus_samples(demo.url)
    for status, count in (("200", 3), ("400", 2)):
        counted = [support.sample_total(samples, "http_requests_total", status=status, **route)
                   for samples in (before, after)]  # fmt: skip
        assert counted[1] - counted[0] == count, status
    statuses = {dict(labels)["status"] for name, labels in after if name == "http_requests_total"}
    assert not [status for status in statuses if status.startswith("5")]  # the deep body: a 400
    scored = [support.sample_total(scrape, "model_predictions_total") for scrape in (before, after)]
    assert scored[1] - scored[0] == 3

    def logged():
        return support.logged_by("demo", folder / "predictions.db", started)

    assert support.wait_until(lambda: len(logged()) == 3, timeout=30), (
        folder / "demo.log"
    ).read_text()
    labels = [answer["classes"][0]["label"] for answer in answers]
    assert [str(predicted) for predicted in logged()["predicted"]] == labels


def test_huge_images_are_refused_from_their_header_and_a_normal_request_is_answered_meanwhile(
    demo, real_model
):
    """Eight 13000×13000 white PNGs in flight (169 MB each decoded), and one normal request."""
    body = json.dumps({"image": base64.b64encode(support.huge_png(13000, 13000)).decode()}).encode()
    answers: list[tuple[int, dict]] = []
    peak_before = support.memory_kb(demo.pid)
    senders = [threading.Thread(target=lambda: answers.append(classify(demo.url, body)))
               for _ in range(8)]  # fmt: skip
    for sender in senders:
        sender.start()
    started = time.perf_counter()
    status, _ = classify(demo.url, json.dumps({"image": png_data_url(real_model.images[2])})
                         .encode())  # fmt: skip
    elapsed = time.perf_counter() - started
    for sender in senders:
        sender.join(timeout=30)
    # a deadline that only catches an event loop blocked until the huge ones are done
    assert status == 200 and elapsed < 15, elapsed
    assert [status for status, _ in answers] == [400] * 8
    assert all("13000×13000" in said["message"] and "\n" not in said["message"]
               for _, said in answers), answers  # fmt: skip
    assert support.memory_kb(demo.pid) - peak_before < 100_000  # kB: no image was decoded


def strokes(image: np.ndarray) -> list[tuple[int, int, int]]:
    """The digit as horizontal pen strokes: (row, first column, last column) of each ink run."""
    runs = []
    for row, line in enumerate(image > 0.5):
        columns = np.flatnonzero(line)
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1):
            if len(run):
                runs.append((row, int(run[0]), int(run[-1])))
    return runs


def draw(driver, canvas, image: np.ndarray) -> int:
    """Drag the mouse along each stroke, as a person would; return how many strokes."""
    from selenium.webdriver.common.action_chains import ActionChains

    half = 140  # offsets are from the canvas's centre
    done = 0
    for row, first, last in strokes(image):
        y = row * SCALE + SCALE // 2 - half
        chain = ActionChains(driver, duration=0)
        chain.move_to_element_with_offset(canvas, first * SCALE + 5 - half, y).click_and_hold()
        chain.move_to_element_with_offset(canvas, last * SCALE + 5 - half, y).release().perform()
        done += 1
    return done


def test_a_digit_drawn_with_the_mouse_is_recognised(demo, real_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = support.browser()
    try:
        driver.get(demo.url + "/")
        canvas = driver.find_element(By.ID, "board")
        confident = np.flatnonzero(real_model.predicted == real_model.labels)[:3]
        shown = []
        for index in confident:
            driver.find_element(By.ID, "clear").click()
            assert draw(driver, canvas, real_model.images[index]) > 3
            # each stroke's pointerup sends a request, counted as pending before it goes out
            WebDriverWait(driver, 60).until(
                lambda page: (
                    canvas.get_attribute("data-pending") == "0"
                    and int(canvas.get_attribute("data-classified")) > 0
                )
            )
            first = driver.find_element(By.CSS_SELECTOR, "#answer li")
            shown.append(first.get_attribute("data-label"))
        assert shown == [str(real_model.labels[index]) for index in confident]
    finally:
        driver.quit()
