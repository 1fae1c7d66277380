package node

import ds "github.com/ipfs/go-datastore"

func datastoreKey(s string) ds.Key { return ds.NewKey(s) }
