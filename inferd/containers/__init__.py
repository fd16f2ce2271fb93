"""Container APIs (Cortex's container generation, ``pod.containers``): the user's own web server.

- ``expand``: Kubernetes' ``$(VAR)`` expansion of command and args;
- ``engine``: which container engine (podman, docker) can run images here, and its command line;
- ``launch``: from a container's spec to what is started (argv, environment, where it runs);
- ``process``: one supervised container process (its own process group, output to the log);
- ``probes``: readiness, liveness and pre_stop actions (http_get, tcp_socket, exec);
- ``replica``: one replica of the pod, a ``WorkerBackend`` (port, scratch dir, probes, stop);
- ``upstream``: the HTTP/1.1 client the proxy forwards with (keep-alive, streaming);
- ``proxy``: the RealtimeAPI front that forwards requests to a ready replica.
"""
