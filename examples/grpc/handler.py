import re

POSITIVE = {"love", "great", "good", "excellent", "happy"}
NEGATIVE = {"hate", "bad", "awful", "terrible", "sad"}


class Handler:
    def __init__(self, config, proto_module_pb2):
        self.pb2 = proto_module_pb2

    def _label(self, text):
        words = re.findall(r"[a-z']+", text.lower())
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return self.pb2.Label(label=label, score=score)

    def Predict(self, payload):
        return self._label(payload.text)

    def PredictStream(self, payload):
        for message in payload:
            yield self._label(message.text)
