class Task:
    def __call__(self, config):
        pass
