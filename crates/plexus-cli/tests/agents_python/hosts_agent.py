"""An agent written with the published Python SDK (mirastack-agents-sdk 1.11.0) for
the tests: one READ action (`lookup`) and one MODIFY action (`restart`), parameters
declared in its schema.

Run as it is, it shows what the unmodified SDK can do against Plexus: register (from
Info: its GetSchema cannot answer), heartbeat, deregister on SIGTERM; its Execute fails
inside the SDK. With MEND_SDK=1 the SDK's two defects are mended first (see `mend`).
"""

import asyncio
import json
import os
import sys

import mirastack_sdk
from mirastack_sdk import (
    Action,
    ConfigParam,
    DevOpsStage,
    ExecuteRequest,
    ExecuteResponse,
    ParamSchema,
    Permission,
    Plugin,
    PluginInfo,
    PluginSchema,
    RoutingSemantics,
    serve,
)


def mend():
    """The published SDK's two defects, mended from outside (a user can do the same):

    1. Its Execute and ConfigUpdated handlers call `request.get(...)` on the decoded
       message object, which has no `get`: give the message class one.
    2. Replies and requests holding `bytes` (result_json, context_json, data_json...)
       go through plain `json.dumps`, which cannot write bytes: write them as their
       text, which is what the engine reads from a Python plugin.
    """
    from mirastack_sdk.gen import plugin_pb2, plugin_pb2_grpc
    from mirastack_sdk import context as sdk_context

    plugin_pb2._Msg.get = lambda self, key, default=None: getattr(self, key, default)

    class BytesAsText:
        @staticmethod
        def dumps(obj, **kw):
            return json.dumps(obj, default=lambda b: b.decode() if isinstance(b, bytes) else str(b), **kw)

        loads = staticmethod(json.loads)

    for module in (plugin_pb2, plugin_pb2_grpc, sdk_context):
        module.json = BytesAsText


def routing(use_case):
    # The SDK's own start-up check asks for routing semantics on every action.
    return RoutingSemantics(accepted_intent_domains=["ops.hosts"], capability_domain="ops.hosts",
                            positive_use_cases=[use_case])


class Hosts(Plugin):
    def info(self):
        return PluginInfo(
            name="hosts",
            version="1.0.0",
            description="Looks hosts up and restarts them",
            permissions=[Permission.READ, Permission.MODIFY],
            devops_stages=[DevOpsStage.OPERATE],
            actions=[
                Action(id="lookup", description="Where a host runs", permission=Permission.READ,
                       stages=[DevOpsStage.OPERATE], routing=routing("find the rack of a host")),
                Action(id="restart", description="Restarts a host", permission=Permission.MODIFY,
                       stages=[DevOpsStage.OPERATE], routing=routing("power-cycle a host")),
            ],
            config_params=[ConfigParam(key="region", description="Where the hosts are")],
        )

    def schema(self):
        return PluginSchema(input_params=[ParamSchema(name="host", type="string", required=True,
                                                      description="The host")])

    async def execute(self, req: ExecuteRequest) -> ExecuteResponse:
        host = req.params.get("host", "")
        action = req.action_id or req.params.get("action", "")
        if action == "lookup":
            return ExecuteResponse(output={"host": host, "rack": "r7", "mode": int(req.mode)})
        if action == "restart":
            ctx = self._engine_context
            approved = await ctx.request_approval(req.execution_id, f"power-cycle {host}", Permission.MODIFY)
            if not approved:
                return ExecuteResponse(output={"error": f"restart of {host} was not approved"})
            await ctx.log_event("info", "host restarted", {"host": host})
            config = await ctx.get_config()
            with open(os.environ["RESTARTS_FILE"], "a") as f:
                f.write(host + "\n")
            return ExecuteResponse(output={"host": host, "restarted": True, "region": config.get("region", "")})
        return ExecuteResponse(output={"error": f"unknown action {action}"})


if __name__ == "__main__":
    if os.environ.get("MEND_SDK") == "1":
        mend()
    print("sdk", mirastack_sdk.__version__, file=sys.stderr)
    serve(Hosts())
