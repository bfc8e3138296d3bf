# The TPM drivers the agent needs, from the Tessera repository's kernel fragment
# (the Buildroot tree uses the same file), for distributions with the tpm or tpm2
# feature (as meta-security's TPM layer asks): linux-yocto merges every .cfg in
# SRC_URI into the kernel configuration.
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../kernel:"
SRC_URI:append = "${@bb.utils.contains_any('DISTRO_FEATURES', 'tpm tpm2', ' file://tpm.cfg', '', d)}"
