"""A definition file without a Task class."""


class Handler:
    def __call__(self, config):
        pass
