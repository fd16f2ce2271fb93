"""Job runners: queued work (AsyncAPI jobs) fed from the store to worker pools."""
