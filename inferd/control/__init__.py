"""inferd's control API (``inferd.v1.Control``) on a Unix socket: the daemon serves it, the CLI calls it.

The canonical proto is ``protos/inferd/v1/control.proto``; the copy beside this file ships in
the wheel (a test keeps them identical). Both sides compile it at run time with grpcio-tools
and use descriptor-built message classes, so no generated code pins protobuf's version.
"""
