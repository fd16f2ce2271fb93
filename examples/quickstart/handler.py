"""A word-list sentiment scorer: a Cortex RealtimeAPI handler with no dependencies."""

import re


class Handler:
    def __init__(self, config):
        self.positive = set(config["positive"])
        self.negative = set(config["negative"])

    def handle_post(self, payload):
        words = re.findall(r"[a-z']+", str(payload.get("text", "")).lower())
        score = sum(w in self.positive for w in words) - sum(w in self.negative for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"label": label, "score": score}

    def handle_get(self):
        return {"status": "ready", "usage": "POST a JSON body like {\"text\": \"I love it\"}"}
