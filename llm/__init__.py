"""The avatar assistant's brain: a router from one chat turn to many LLM providers, with speech built in."""
