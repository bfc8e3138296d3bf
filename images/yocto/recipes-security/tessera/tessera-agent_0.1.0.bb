SUMMARY = "Tessera agent: SPIFFE workload identities rooted in the device's TPM"
DESCRIPTION = "Serves SPIFFE identities to the workloads of this device over the \
Workload API, after proving the device to a Tessera server with its TPM's DevID. \
Installs a prebuilt static binary (musl, with the pure-Rust TPM stack) and the \
files of the Tessera repository's images/rootfs overlay."
HOMEPAGE = "https://github.com/tessera-id/tessera"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The static tessera-agent binary for this machine (x86_64 or aarch64, musl): a
# release binary, or one from the project's static build. Set it in local.conf
# or a bbappend; the recipe is skipped until it is set.
TESSERA_AGENT_BINARY ?= ""

# The overlay files come from images/rootfs, next to this layer: the boot tests
# and the Buildroot tree install the same files. (FILESEXTRAPATHS in a recipe
# rather than an append: there is one source of these files, and it is there.)
FILESEXTRAPATHS:prepend := "${THISDIR}/../../../rootfs:"
SRC_URI = " \
    file://etc/tessera/agent.toml \
    file://usr/lib/systemd/system/tessera-agent.service \
    file://usr/lib/sysusers.d/tessera-agent.conf \
    file://usr/lib/tmpfiles.d/tessera-agent.conf \
    file://usr/lib/udev/rules.d/60-tessera-tpm.rules \
"
# Where the fetcher puts them (UNPACKDIR from Yocto 5.1 on).
TESSERA_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${TESSERA_FILES}"

COMPATIBLE_HOST = "(x86_64|aarch64).*-linux.*"

inherit systemd useradd

# The agent's user, a member of tss (the group of /dev/tpmrm0 by
# 60-tessera-tpm.rules); the same as sysusers.d/tessera-agent.conf. tss is made
# unless the TPM software stack's recipe made it already.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system tss"
USERADD_PARAM:${PN} = "--system --user-group --groups tss --home-dir ${localstatedir}/lib/tessera/agent \
    --no-create-home --shell ${base_sbindir}/nologin --comment 'Tessera SPIFFE agent' tessera-agent"

SYSTEMD_SERVICE:${PN} = "tessera-agent.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

python () {
    if not d.getVar('TESSERA_AGENT_BINARY'):
        raise bb.parse.SkipRecipe("TESSERA_AGENT_BINARY is not set: set it to the path of the static tessera-agent binary for this machine")
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"
# The binary is not fetched: a change to it must still rebuild the package.
do_install[file-checksums] += "${TESSERA_AGENT_BINARY}:True"

do_install() {
    install -D -m 0755 ${TESSERA_AGENT_BINARY} ${D}${bindir}/tessera-agent
    install -D -m 0644 ${TESSERA_FILES}/etc/tessera/agent.toml ${D}${sysconfdir}/tessera/agent.toml
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/systemd/system/tessera-agent.service ${D}${systemd_system_unitdir}/tessera-agent.service
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/sysusers.d/tessera-agent.conf ${D}${nonarch_libdir}/sysusers.d/tessera-agent.conf
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/tmpfiles.d/tessera-agent.conf ${D}${nonarch_libdir}/tmpfiles.d/tessera-agent.conf
    install -D -m 0644 ${TESSERA_FILES}/usr/lib/udev/rules.d/60-tessera-tpm.rules ${D}${nonarch_base_libdir}/udev/rules.d/60-tessera-tpm.rules
}

FILES:${PN} += "${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
    ${nonarch_base_libdir}/udev/rules.d \
"
CONFFILES:${PN} = "${sysconfdir}/tessera/agent.toml"

# A release binary comes stripped, with no debug information to split (with both
# set, the packaging does not look for stripped files either).
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"
