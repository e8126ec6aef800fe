"""The live page at ``/``: submit a job and watch its events (plain HTML and EventSource)."""

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@lru_cache
def _page() -> str:
    return resources.files("app").joinpath("static").joinpath("index.html").read_text("utf-8")


@router.get("/", response_class=HTMLResponse)
async def live_page() -> str:
    return _page()
