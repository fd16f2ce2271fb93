"""The quickstart's word-list scorer, one version per API of the split (config names it)."""

import re

POSITIVE = {"love", "great", "good", "excellent", "happy"}
NEGATIVE = {"hate", "bad", "awful", "terrible", "sad"}


class Handler:
    def __init__(self, config):
        self.version = config["version"]

    def handle_post(self, payload):
        words = re.findall(r"[a-z']+", str(payload.get("text", "")).lower())
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"label": label, "score": score, "version": self.version}
