package node

import (
	"sync"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/pbnjay/memory"
)

// Memory is the memory this process may use: the machine's, or the memory
// limit of the cgroup it runs in (a container's, a systemd unit's
// MemoryMax) where that is lower.
type Memory struct {
	// Bytes is the usable memory.
	Bytes uint64
	// Machine is the machine's memory, as the kernel reports it.
	Machine uint64
	// Cgroup reports whether a cgroup limit is what set Bytes.
	Cgroup bool
}

// MachineMemory returns the memory this process may use, read once. libp2p
// (and the pbnjay/memory package it uses) sees only the machine's memory,
// so inside a container limited to 1 GiB on a 64 GiB host the resource
// manager would let peers make the instance buffer up to 8 GiB, past the
// container's limit, and the kernel would end the process instead of
// libp2p refusing the streams.
func MachineMemory() Memory { return machineMemory() }

var machineMemory = sync.OnceValue(func() Memory {
	return usableMemory(memory.TotalMemory(), memlimit.FromCgroup)
})

// usableMemory is MachineMemory with its sources given: the machine's
// total, and a reader of the cgroup's limit (an error where there is no
// cgroup or no limit).
func usableMemory(machine uint64, cgroupLimit func() (uint64, error)) Memory {
	m := Memory{Bytes: machine, Machine: machine}
	if limit, err := cgroupLimit(); err == nil && limit > 0 && (machine == 0 || limit < machine) {
		m.Bytes, m.Cgroup = limit, true
	}
	return m
}
