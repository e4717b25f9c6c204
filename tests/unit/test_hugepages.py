import torch

from dlrm_core import hugepages


def vm_flags_of(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps").read().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_big_tensors_are_advised_for_huge_pages_and_usable():
    t = hugepages.empty((hugepages.HUGE_PAGE // 4 + 3, 2), torch.int32)  # a little over 4 MiB
    assert t.shape == (hugepages.HUGE_PAGE // 4 + 3, 2) and t.is_contiguous()
    t.fill_(7)
    assert int(t.sum()) == 7 * t.numel()
    assert "hg" in vm_flags_of(t.data_ptr())  # MADV_HUGEPAGE


def test_small_tensors_stay_ordinary():
    t = hugepages.empty((10, 3), torch.float32)
    assert t.shape == (10, 3) and "hg" not in vm_flags_of(t.data_ptr())
