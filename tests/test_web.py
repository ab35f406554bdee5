"""The web page at ``/``, in a real headless Chromium (selenium + chromedriver).

The server runs in a thread on a free loopback port around the tiny index; the tiny generator
writes nonsense, so :class:`~serve_helpers.CitingPipeline` answers with the best retrieved
passage's title cited as ``[1]`` (or abstains on a poor retrieval score). Where Chromium cannot
be started the browser tests skip, saying why, except under CI (``CI=true``), where they fail:
``scripts/test.sh`` installs ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from rag_pipeline.answer.ask import ABSTAIN, Pipeline
from rag_pipeline.serve import ServeConfig
from rag_pipeline.serve.app import create_app

from serve_helpers import CitingPipeline, ThreadServer, wait_healthy

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1200,900"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test must run in CI, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _unavailable("chromium and chromedriver are not installed (scripts/test.sh installs them: "
                     "apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    try:
        b = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    except WebDriverException as e:
        _unavailable(f"chromium could not be started: {(e.msg or str(e)).splitlines()[0]}")
    b.set_page_load_timeout(30)
    yield b
    b.quit()


@pytest.fixture(scope="module")
def pipe(env: dict) -> CitingPipeline:
    cfg = ServeConfig(index=str(env["index"]), adapter=str(env["adapter"]), device="cpu", dtype="float32", max_new_tokens=4)
    return CitingPipeline(Pipeline.load(cfg))


def _serve(pipe: CitingPipeline, api_key: str = "") -> ThreadServer:
    return ThreadServer(create_app(ServeConfig(index="unused"), "tiny-adapter", api_key, lambda: pipe))


def _ask(browser, url: str, question: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "ask").is_enabled())
    assert "tiny-adapter" in browser.find_element(By.ID, "model").text
    box = browser.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    browser.find_element(By.ID, "ask").click()


def _status_after_answer(browser) -> str:
    WebDriverWait(browser, 30).until(lambda b: re.match(r"(Answered|Summarized|Abstained|Error|This server)", b.find_element(By.ID, "status").text))
    return browser.find_element(By.ID, "status").text


def test_page_shows_a_cited_answer_and_opens_its_source(browser, pipe: CitingPipeline) -> None:
    with _serve(pipe) as srv:
        wait_healthy(srv.url, 30)
        _ask(browser, srv.url + "/", "Where is the Eiffel Tower?")
        assert _status_after_answer(browser) == "Answered with 1 cited source."
        assert browser.find_element(By.ID, "answer").text == "Eiffel Tower [1]"
        link = browser.find_element(By.CSS_SELECTOR, "#answer a.cite")
        assert link.text == "1" and link.get_attribute("href").endswith("#source-1")
        source = browser.find_element(By.ID, "source-1")
        assert source.get_attribute("open") is None  # closed until the citation is followed
        summary = source.find_element(By.TAG_NAME, "summary").text
        assert "Eiffel Tower" in summary and "docs.jsonl" in summary and re.search(r"score \d\.\d{3}", summary)
        link.click()
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "source-1").get_attribute("open") is not None)
        assert "active" in source.get_attribute("class")
        passage = source.find_element(By.CLASS_NAME, "passage")
        assert passage.is_displayed() and passage.text.startswith("The Eiffel Tower is a wrought iron lattice tower in Paris.")
        assert sorted(m.text for m in passage.find_elements(By.TAG_NAME, "mark")) == ["Eiffel", "Tower", "tower"]  # case-insensitive, whole words


def test_page_shows_a_summary_with_each_sentence_linked_and_checked(browser, pipe: CitingPipeline) -> None:
    with _serve(pipe) as srv:
        wait_healthy(srv.url, 30)
        browser.get(srv.url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "ask").is_enabled())
        browser.find_element(By.ID, "summary-mode").click()
        box = browser.find_element(By.ID, "question")
        box.send_keys("Where is the Eiffel Tower?")
        browser.find_element(By.ID, "ask").click()
        status = _status_after_answer(browser)
        assert status == "Summarized with 1 cited source; 1 of 2 sentences supported by the passages they cite.", status
        first, second = browser.find_elements(By.CSS_SELECTOR, "#answer span.sentence")
        assert first.text == "The Eiffel Tower is a wrought iron lattice tower in Paris [1]."
        assert second.text == "The passage was written by owls [1]."
        assert "unsupported" not in first.get_attribute("class") and "unsupported" in second.get_attribute("class")
        assert "do not hold" in second.get_attribute("title")
        first.find_element(By.CSS_SELECTOR, "a.cite").click()
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "source-1").get_attribute("open") is not None)


def test_page_shows_an_abstention_as_one(browser, pipe: CitingPipeline) -> None:
    with _serve(pipe) as srv:
        wait_healthy(srv.url, 30)
        _ask(browser, srv.url + "/", "zebra quantum saxophone")
        assert _status_after_answer(browser) == "Abstained."
        assert browser.find_element(By.ID, "answer").text == ABSTAIN
        assert "abstained" in browser.find_element(By.ID, "answer-box").get_attribute("class")
        assert browser.find_element(By.ID, "abstain-note").is_displayed()
        assert browser.find_elements(By.CSS_SELECTOR, "#sources details") == []


def test_page_asks_for_the_api_key_when_the_server_needs_one(browser, pipe: CitingPipeline) -> None:
    with _serve(pipe, api_key="page-key") as srv:
        wait_healthy(srv.url, 30)
        _ask(browser, srv.url + "/", "Who created the Python programming language?")
        assert _status_after_answer(browser).startswith("This server needs an API key")
        key = browser.find_element(By.ID, "api-key")
        assert key.is_displayed()
        key.send_keys("page-key")
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "answer").text == "Python [1]")


def test_a_newly_typed_key_wins_over_the_stored_one_and_is_kept(browser, pipe: CitingPipeline) -> None:
    """The page sent the key kept in sessionStorage before the one just typed: a stale key could never be replaced."""
    with _serve(pipe, api_key="new-key") as srv:
        wait_healthy(srv.url, 30)
        browser.get(srv.url + "/")
        browser.execute_script("sessionStorage.setItem('rag-api-key', 'old-key');")  # kept from an earlier server
        _ask(browser, srv.url + "/", "Who created the Python programming language?")
        assert _status_after_answer(browser).startswith("This server needs an API key")
        browser.find_element(By.ID, "api-key").send_keys("new-key")
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "answer").text == "Python [1]")
        assert browser.execute_script("return sessionStorage.getItem('rag-api-key');") == "new-key"
        _ask(browser, srv.url + "/", "Where is the Eiffel Tower?")  # a reload: the field is empty, the stored key answers
        assert _status_after_answer(browser) == "Answered with 1 cited source."


def test_page_is_one_self_contained_file(pipe: CitingPipeline) -> None:
    with _serve(pipe) as srv:
        r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"] and "connect-src 'self'" in r.headers["content-security-policy"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text) and "@import" not in r.text
    assert "innerHTML" not in r.text  # untrusted passages are set as text only
    packaged = Path(__file__).resolve().parent.parent / "rag_pipeline" / "web" / "index.html"
    assert r.text == packaged.read_text(encoding="utf-8")
