class Handler:
    def __init__(self, config, proto_module_pb2):
        pass

    def Predict(self, payload):
        return payload
