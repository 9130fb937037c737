"""One projection over many Kafka workers (balances), as Kafka Streams does with a repartition
topic: *derivers* (one lease per source partition) turn the balances events into per-account
rows on a topic partitioned by account (repartition.py, deriver.py); each worker folds the
partitions of that topic it owns, in height order, each into its own store with its positions
(shard.py, engine.py); a consumer group hands out both kinds of lease (group.py). The sum of the shards' digests is the embedded fold's digest. docs/KAFKA.md tells how
it runs on a cluster."""
