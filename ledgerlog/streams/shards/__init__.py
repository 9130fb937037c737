"""One projection over many Kafka workers (balances), as Kafka Streams does with a repartition
topic: a *deriver* turns the balances events into per-account rows on a topic keyed by account
(repartition.py, deriver.py); each worker folds the partitions of that topic it owns, each into
its own store with its positions (shard.py, engine.py); a consumer group hands out the partitions
(group.py). The sum of the shards' digests is the embedded fold's digest. docs/KAFKA.md tells how
it runs on a cluster."""
