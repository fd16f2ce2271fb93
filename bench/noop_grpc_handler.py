class Handler:
    def __init__(self, config, proto_module_pb2):
        self.pb2 = proto_module_pb2

    def Predict(self, payload):
        return self.pb2.Reply(ok=True, n=payload.n)
