"""`ledgerlog stream-worker`: the Kafka projection worker process (streams/faust_worker.py folds)
and its HTTP endpoint, served like the node's API."""
