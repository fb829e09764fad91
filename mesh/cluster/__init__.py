"""Cluster state: typed records, a small key-value interface with etcd and in-memory backends,
leases, transactions, the watch-fed mirror, leased registration and leader election."""
