"""Tokenizers, chat templates and streaming detokenization (see tokenizer.py for what loads from where)."""

from lite_srt.tokenizer.detokenizer import IncrementalDetokenizer, StopStringMatcher
from lite_srt.tokenizer.tokenizer import Tokenizer, load_tokenizer

__all__ = ["IncrementalDetokenizer", "StopStringMatcher", "Tokenizer", "load_tokenizer"]
