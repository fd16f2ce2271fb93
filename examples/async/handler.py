import time

from cortex_internal.lib.log import logger


class Handler:
    def __init__(self, config):
        pass

    def handle_async(self, payload, request_id):
        text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
        logger.info("summarizing", extra={"request_id": request_id, "chars": len(text)})
        time.sleep(0.5)  # stands in for a slow model
        sentences = [s.strip() for s in text.split(".") if s.strip()]
        return {"summary": ". ".join(sentences[:1]) + ("." if sentences else ""), "sentences": len(sentences)}
