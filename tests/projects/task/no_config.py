"""A Task whose __call__ does not take config."""


class Task:
    def __call__(self):
        pass
