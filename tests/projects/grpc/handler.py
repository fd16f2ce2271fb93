import os
import threading
import time

import grpc


class Handler:
    def __init__(self, config, proto_module_pb2):
        self.pb2 = proto_module_pb2
        self.greeting = config["greeting"]
        self.produced = 0
        self.lock = threading.Lock()

    def Predict(self, payload, context):
        if payload.text == "fail":
            raise ValueError("predict failed on purpose")
        if payload.text == "abort":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text must not be abort")
        if payload.text == "exit":
            os._exit(3)
        if payload.text == "code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("nothing here")
            return self.pb2.Response()
        if payload.text == "wrong_type":
            return payload
        if payload.delay:
            time.sleep(payload.delay)
        return self.pb2.Response(text=payload.text.upper(), index=payload.count)

    def Generate(self, payload, context):
        self.produced = 0
        for i in range(payload.count):
            if payload.delay:
                time.sleep(payload.delay)
            self.produced += 1
            yield self.pb2.Response(text=payload.text * max(payload.size, 1), index=i)

    def Sum(self, payload):
        texts = [sample.text for sample in payload]
        return self.pb2.Response(text="+".join(texts), index=len(texts))

    def Chat(self, payload, context):
        for sample in payload:
            yield self.pb2.Response(text=sample.text[::-1], index=sample.count)

    def Info(self, payload):
        return self.pb2.Response(text=self.greeting, index=self.produced)
