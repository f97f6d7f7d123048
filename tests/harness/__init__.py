"""Test harness: real sshd fleets, real Ansible runs and fault injection on loopback."""
