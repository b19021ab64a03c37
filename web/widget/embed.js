// Embeds the ChatAI chat widget in any page (a classic script, no module
// needed):
//
//   <script src="https://chat.example.com/web/widget/embed.js"></script>
//   <script>
//     ChatAIWidget.mount({
//       // your server mints the user's token (README, "In the browser")
//       getToken: async () => (await (await fetch('/chat-token')).json()).token,
//       title: 'Acme support',
//     });
//   </script>
//
// It adds a launcher button and an iframe of `/widget` from the gateway this
// script came from, and hands the iframe the token by `postMessage`: on the
// widget's `chatai:ready` and `chatai:token-request` it calls `getToken()`
// and posts `{type: 'chatai:token', token}` to the widget's origin only;
// it listens only to that iframe.
(function () {
  'use strict';
  var script = document.currentScript;
  var origin = script ? new URL(script.src, location.href).origin : location.origin;

  function mount(options) {
    options = options || {};
    if (typeof options.getToken !== 'function') throw new Error('ChatAIWidget.mount needs getToken');
    var container = options.container || document.body;
    var panel = document.createElement('div');
    panel.className = 'chatai-widget-panel';
    panel.style.cssText = options.container ? 'width:100%;height:100%;' :
      'position:fixed;right:20px;bottom:84px;width:380px;height:600px;max-height:calc(100vh - 110px);' +
      'box-shadow:0 8px 30px rgba(0,0,0,.25);border-radius:12px;overflow:hidden;z-index:2147483000;background:#fff;';
    var frame = document.createElement('iframe');
    var query = options.title ? '?title=' + encodeURIComponent(options.title) : '';
    frame.src = origin + '/widget' + query;
    frame.title = options.title || 'Support chat';
    frame.style.cssText = 'border:0;width:100%;height:100%;display:block;';
    panel.appendChild(frame);

    var launcher = null;
    if (!options.container) {
      launcher = document.createElement('button');
      launcher.type = 'button';
      launcher.textContent = options.launcherText || 'Chat with us';
      launcher.setAttribute('aria-expanded', 'true');
      launcher.style.cssText = 'position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;border-radius:999px;' +
        'padding:12px 20px;background:#1f5fbf;color:#fff;font:600 15px system-ui,sans-serif;cursor:pointer;' +
        'box-shadow:0 4px 14px rgba(0,0,0,.25);';
      launcher.addEventListener('click', function () {
        var open = panel.style.display === 'none';
        panel.style.display = open ? '' : 'none';
        launcher.setAttribute('aria-expanded', String(open));
      });
      if (options.open === false) {
        panel.style.display = 'none';
        launcher.setAttribute('aria-expanded', 'false');
      }
    }

    function handOver() {
      Promise.resolve()
        .then(options.getToken)
        .then(function (token) {
          frame.contentWindow.postMessage({ type: 'chatai:token', token: token }, origin);
        })
        .catch(function (err) {
          if (options.onError) options.onError(err);
          else if (window.console) window.console.error('ChatAI widget: no token', err);
        });
    }

    window.addEventListener('message', function (event) {
      if (event.source !== frame.contentWindow || event.origin !== origin || !event.data) return;
      if (event.data.type === 'chatai:ready' || event.data.type === 'chatai:token-request') handOver();
    });

    container.appendChild(panel);
    if (launcher) container.appendChild(launcher);
    return { frame: frame, panel: panel, launcher: launcher };
  }

  window.ChatAIWidget = { mount: mount };
})();
