"""The page of GET /, driven in a real headless Chromium as a person would use it."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Run, write_png
from serving import Server, running_server

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver", reason='pip install -e ".[dev]" (selenium)')
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next(filter(None, map(shutil.which, BROWSERS)), None)
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "no Chromium here (Debian: apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(
    trained: Run, child_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with running_server(trained.best, tmp_path_factory.mktemp("server"), child_env) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator["webdriver.Chrome"]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        # Nothing but the page's own requests: no updates, no sync, no other hosts.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=900,700",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_person_drops_an_image_and_sees_the_answer(
    server: Server, browser: "webdriver.Chrome", trained: Run, tmp_path: Path
) -> None:
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    image = next(iter(datamodule.test_dataloader()))[0][0]
    png = tmp_path / "test-image.png"
    write_png(image, png)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    wait = WebDriverWait(browser, 30)

    browser.get(server.url)
    about = browser.find_element(By.ID, "about")
    wait.until(lambda _: trained.best.name in about.text)
    assert all(name in about.text for name in datamodule.class_names)

    picker = browser.find_element(By.ID, "file")
    picker.send_keys(str(png))
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#scores .score"))
    shown = browser.find_element(By.CSS_SELECTOR, "#scores .score .name").text
    assert shown == server.post_image(png.read_bytes()).body["class_name"]
    seen = browser.find_element(By.ID, "seen")
    height, width = datamodule.image_size
    assert browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", seen
    ) == [width, height]
    browser.save_screenshot(str(tmp_path / "page.png"))

    picker.send_keys(str(text))
    error = browser.find_element(By.ID, "error")
    wait.until(lambda _: error.text)
    assert error.text == f"notes.txt: {server.post_image(text.read_bytes()).body['detail']}"
    assert not browser.find_element(By.ID, "result").is_displayed()

    picker.send_keys(str(png))  # the page goes on working after an error
    wait.until(lambda _: browser.find_element(By.ID, "result").is_displayed())
    assert error.text == ""
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
