################################################################################
#
# tessera-agent
#
################################################################################

# No source to download: the binary is prebuilt (BR2_PACKAGE_TESSERA_AGENT_BINARY)
# and the other files come from the project's images/rootfs overlay, next to this
# tree, which the boot tests and the Yocto layer install as well.
TESSERA_AGENT_LICENSE = Apache-2.0
TESSERA_AGENT_BINARY = $(call qstrip,$(BR2_PACKAGE_TESSERA_AGENT_BINARY))
TESSERA_AGENT_ROOTFS = $(BR2_EXTERNAL_TESSERA_PATH)/../rootfs

# The agent's user; its supplementary group tss owns /dev/tpmrm0
# (60-tessera-tpm.rules). The same as sysusers.d/tessera-agent.conf, for images
# whose /etc is made at build time.
TESSERA_AGENT_USERS = tessera-agent -1 tessera-agent -1 * /var/lib/tessera/agent - tss Tessera SPIFFE agent

ifeq ($(BR_BUILDING),y)
ifeq ($(TESSERA_AGENT_BINARY),)
$(error BR2_PACKAGE_TESSERA_AGENT_BINARY is empty: set it to the path of the static tessera-agent binary for this target)
endif
endif

define TESSERA_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(TESSERA_AGENT_BINARY) $(TARGET_DIR)/usr/bin/tessera-agent
	$(INSTALL) -D -m 0644 $(TESSERA_AGENT_ROOTFS)/etc/tessera/agent.toml $(TARGET_DIR)/etc/tessera/agent.toml
	$(INSTALL) -D -m 0644 $(TESSERA_AGENT_ROOTFS)/usr/lib/sysusers.d/tessera-agent.conf $(TARGET_DIR)/usr/lib/sysusers.d/tessera-agent.conf
	$(INSTALL) -D -m 0644 $(TESSERA_AGENT_ROOTFS)/usr/lib/tmpfiles.d/tessera-agent.conf $(TARGET_DIR)/usr/lib/tmpfiles.d/tessera-agent.conf
	$(INSTALL) -D -m 0644 $(TESSERA_AGENT_ROOTFS)/usr/lib/udev/rules.d/60-tessera-tpm.rules $(TARGET_DIR)/usr/lib/udev/rules.d/60-tessera-tpm.rules
endef

define TESSERA_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(TESSERA_AGENT_ROOTFS)/usr/lib/systemd/system/tessera-agent.service $(TARGET_DIR)/usr/lib/systemd/system/tessera-agent.service
endef

$(eval $(generic-package))
