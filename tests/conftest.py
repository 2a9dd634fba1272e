"""Fixtures shared by the test modules. A module that serves the API names its own `served` fixture;
`sdk` is the openai SDK pointed at it."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def sdk(served):
    """The openai SDK against this module's served API: no retries of its own, a 20 s timeout."""
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=20)
