"""gRPC APIs (``handler.protobuf_path``): compiling the user's proto and serving it."""
