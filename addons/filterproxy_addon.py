"""filterproxy as a mitmproxy script (thin shell: everything lives in filterproxy.http.addon).

    mitmdump -s addons/filterproxy_addon.py --set filterproxy_config=/etc/filterproxy/filterproxy.yaml \
        [--set filterproxy_extra_list=FORMAT:CATEGORY:PATH ...] [--set filterproxy_client_group=CIDR=GROUP ...]

Options (see ``mitmdump --options``): filterproxy_config, filterproxy_extra_list, filterproxy_client_group,
filterproxy_state_dir, filterproxy_proxy_names, filterproxy_reload_signal. SIGHUP reloads lists,
configuration and the proxy users file without dropping connections.
"""

from filterproxy.http.addon import FilterAddon

addons = [FilterAddon()]
