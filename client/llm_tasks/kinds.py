"""The kinds of job the API runs, and job priorities."""

from enum import StrEnum


class JobKind(StrEnum):
    """What a client can ask for at POST /v1/jobs."""

    GENERATE = "generate"
    CHAT = "chat"
    LONG_TEXT = "long_text"
    SUMMARIZE = "summarize"
    SENTIMENT = "sentiment"
    STORY = "story"
    VARIATIONS = "variations"
    DOCUMENT = "document"
    REPLY = "reply"


#: Client-facing priorities: 0 (least urgent) to 9 (most urgent).
PRIORITY_LEVELS = 10
DEFAULT_PRIORITY = 5
