"""lite_srt: a small, fast LLM serving runtime."""
