# The TPM drivers the agent needs, from the Tessera repository's kernel fragment
# (the Buildroot tree uses the same file). linux-yocto merges every .cfg in
# SRC_URI into the kernel configuration.
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../kernel:"
SRC_URI += "file://tpm.cfg"
