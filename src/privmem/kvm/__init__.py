"""KVM uAPI: ctypes structs, computed ioctl numbers, thin fd wrappers and a capability probe.

The only package that knows the kernel's binary interface (docs/design.md, "kvm/")."""

from . import ioctls, uapi
from .probe import format_info, probe
from .system import Kvm
from .vcpu import Vcpu
from .vm import Vm

__all__ = ["Kvm", "Vcpu", "Vm", "format_info", "ioctls", "probe", "uapi"]
