

def with_lake_io(resources: dict) -> dict:
    """Resources for ``materialize``: the given ones plus the lake IO manager over their ``lake``."""
    from radplan_resources.io_manager import LakeIOManager

    return {**resources, "io_manager": LakeIOManager(lake=resources["lake"])}


def with_upstream_sources(assets: list) -> list:
    """``assets`` plus, as source assets, the upstream assets their inputs load (materialize runs only what it is given)."""
    from dagster import load_assets_from_modules

    from radplan_assets import ASSET_MODULES

    provided = {key for item in assets for key in item.keys}
    needed = {key for item in assets for key in item.keys_by_input_name.values()} - provided
    sources = [source for item in load_assets_from_modules(ASSET_MODULES) for source in item.to_source_assets() if source.key in needed]
    return [*assets, *sources]
